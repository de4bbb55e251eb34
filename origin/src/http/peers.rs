//! Calls between origins that the view engine makes: batches of its
//! messages (`POST /_prefold/derive`), reference checks (`POST
//! /_prefold/exists`) and parts of text queries (`POST /_prefold/search`). Both take a cluster token, and neither is ever
//! forwarded: the sender routed it by its own layout, and a key this
//! origin does not own is answered 421.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prefold_core::Key;

use super::auth::check_cluster;
use super::body::read_limited;
use super::{ApiError, AppState};
use crate::cluster::link::MAX_BATCH_BYTES;
use crate::cluster::{ExistsAnswer, ExistsQuery};
use crate::views::{Batch, Query as ViewQuery, SearchAsk};

/// A batch may run a little past the sender's limit (it stops growing
/// after the message that crosses it).
const MAX_BODY: u32 = 4 * MAX_BATCH_BYTES as u32;

/// A cluster call's JSON body: the token is checked first, then at most
/// `limit` bytes are read and parsed.
async fn cluster_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: u32,
) -> Result<T, ApiError> {
    check_cluster(state, headers)?;
    let body = read_limited(headers, body, limit).await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

/// `POST /_prefold/derive`: queues another origin's view engine messages.
pub(super) async fn derive_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let batch: Batch = cluster_json(&state, &headers, body, MAX_BODY).await?;
    let engine = state.engine()?;
    let views = state.0.views.get().ok_or(ApiError::NoRoute)?;
    views.receive(engine, batch).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /_prefold/exists`: which of these keys (owned here) hold an object.
pub(super) async fn exists(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = state.0.settings.max_body_bytes;
    let q: ExistsQuery = cluster_json(&state, &headers, body, limit).await?;
    let engine = state.engine()?;
    let mut keys = Vec::with_capacity(q.keys.len());
    for k in &q.keys {
        let key = Key::parse(k)?;
        state.0.settings.ownership.check(&key)?;
        keys.push(key);
    }
    let mut exists = Vec::with_capacity(keys.len());
    for key in &keys {
        exists.push(engine.read(key).await?.is_some());
    }
    Ok(axum::Json(ExistsAnswer { exists }).into_response())
}

/// `POST /_prefold/search`: this origin's part of a text query.
pub(super) async fn search_part(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = state.0.settings.max_body_bytes;
    let ask: SearchAsk = cluster_json(&state, &headers, body, limit).await?;
    state.engine()?;
    let views = state.0.views.get().ok_or(ApiError::NoRoute)?;
    let part = views
        .query(ViewQuery::SearchParts {
            view: ask.view,
            terms: ask.terms,
        })
        .await?;
    Ok(axum::Json(part).into_response())
}
