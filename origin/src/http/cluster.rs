//! The cluster's surface: key ownership (a request for a key another
//! origin owns is forwarded to it, see [`super::forward`], or refused with
//! 421 and the owner's name when it was forwarded already), the change feed
//! the edge pulls, and failover reads (a read the edge sent here because
//! the key's owner failed).

use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use prefold_core::http::SOURCE_HEADER;
use prefold_core::publish::{BatchWriter, MAX_BATCH_BYTES, MAX_BATCH_ITEMS};
use prefold_core::{Key, OriginList};
use serde::Deserialize;

use super::auth::check_cluster;
use super::{query_params, version_headers, ApiError, AppState};
use crate::engine::EngineError;
use crate::publication::add_to_batch;
use crate::storage::read::read_object;
use crate::storage::within;

/// Which keys this origin owns: with an origin list and a name, the keys
/// the list gives this name; without one, every key.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ownership {
    origins: Option<OriginList>,
    name: Option<String>,
}

impl Ownership {
    /// This origin is `name` in `origins` (or owns everything).
    pub(crate) fn new(origins: Option<OriginList>, name: Option<String>) -> Ownership {
        Ownership { origins, name }
    }

    /// The owner of a key when it is not this origin.
    pub(crate) fn other_owner(&self, key: &Key) -> Option<&prefold_core::Origin> {
        match (&self.origins, &self.name) {
            (Some(list), Some(name)) => Some(list.owner(key)).filter(|o| o.name != *name),
            _ => None,
        }
    }

    /// This origin's name in the origin list, if it has one.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether this origin owns a key.
    pub(crate) fn owns(&self, key: &Key) -> bool {
        self.other_owner(key).is_none()
    }

    /// Refuses a key another origin owns: answering it here would serve a
    /// stale or empty copy, or write beside the owner (every key has exactly
    /// one owner). Requests for such keys are forwarded before they get
    /// here; the ones that do get here were forwarded once already, so this
    /// origin and the one that sent them disagree about the owner.
    pub(super) fn check(&self, key: &Key) -> Result<(), ApiError> {
        match self.other_owner(key) {
            Some(owner) => Err(ApiError::NotOwner {
                key: key.to_string(),
                owner: owner.name.clone(),
                url: owner.url.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// `GET /_prefold/changes?after=V&limit=N`: the objects changed after
/// version `V`, oldest first, as a publication batch with the next cursor.
pub(super) async fn change_feed(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    check_cluster(&state, &headers)?;
    let engine = state.engine()?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Params {
        #[serde(default)]
        after: u64,
        limit: Option<usize>,
    }
    let q: Params = query_params(uri.query().unwrap_or_default())?;
    let limit = q.limit.unwrap_or(MAX_BATCH_ITEMS).clamp(1, MAX_BATCH_ITEMS);
    let settings = &state.0.settings;
    let horizon_micros = u64::try_from(settings.feed_horizon.as_micros()).unwrap_or(u64::MAX);
    let horizon = settings.clock.now_micros().saturating_sub(horizon_micros);
    let changes = &state.0.changes;
    let page = changes.feed(q.after, horizon, limit);
    let mut batch = BatchWriter::default();
    let (mut next, mut more) = (q.after, page.more);
    for (version, key) in &page.keys {
        // Cut a large page short, but never between two keys of one version.
        if batch.bytes() >= MAX_BATCH_BYTES && *version != next {
            more = true;
            break;
        }
        next = *version;
        if let Some(o) = engine.read_slot(key).await? {
            add_to_batch(&mut batch, key, &o);
        }
    }
    changes.stats.feed_pages.fetch_add(1, Ordering::Relaxed);
    changes
        .stats
        .feed_items
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let mut resp = Body::from(batch.finish(Some(next), more)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// A read the edge sent here because the key's owner failed: answered from
/// the object store, which holds everything the owner has flushed.
pub(super) async fn failover_read(
    state: &AppState,
    key: &Key,
    head: bool,
) -> Result<Response, ApiError> {
    let fetch = read_object(state.0.store.as_ref(), key);
    let slot = within(state.0.settings.store_timeout, fetch)
        .await
        .map_err(EngineError::from)?;
    let object = slot.filter(|o| !o.tombstone).ok_or(ApiError::NotFound)?;
    let body = if head {
        Bytes::new()
    } else {
        object.body.clone()
    };
    let mut resp = Body::from(body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, object.content_type());
    version_headers(h, &object);
    h.insert(SOURCE_HEADER, HeaderValue::from_static("failover-store"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
