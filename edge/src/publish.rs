//! Publication into KV: pushes from the origins, and the scheduled pull of
//! their change feeds.
//!
//! Both end in [`apply`], which keeps the edge's two rules for KV writes
//! ([`prefold_core::publish::kv_decision`]): a key's KV copy never goes back
//! to an older version, and a key is written at most once per second. An
//! item that comes too soon is deferred — the push answer names it and the
//! origin sends it again later with whatever version is newest then; the
//! pull leaves its cursor before the page and reads it again next time.
//!
//! The current metadata of a batch is read with one bulk KV read, so a batch
//! of [`MAX_BATCH_ITEMS`] costs at most 101 KV operations; the pull stops
//! well before the 1,000 operations one invocation may make, and carries on
//! from its cursor at the next trigger.
//!
//! A deletion is written as an empty value whose metadata says `gone`: reads
//! answer 404 without an origin, and an older version cannot come back
//! through a slower fill.

use std::collections::HashMap;

use futures::future::join_all;
use prefold_core::auth::authorize_cluster;
use prefold_core::config::MAX_BODY_BYTES_CEILING;
use prefold_core::publish::{
    cursor_key, kv_decision, Batch, Deferred, Item, KvDecision, KvMeta, PushReply, CHANGES_PATH,
    MAX_BATCH_BYTES, MAX_BATCH_ITEMS,
};
use prefold_core::{Key, Origin};
use worker::{Env, Request, Response};

use crate::{call_origin, Edge, EdgeError, KV_BINDING};

/// KV operations the pull allows itself per invocation (the platform allows
/// 1,000): room for one more page of [`MAX_BATCH_ITEMS`] plus the cursors.
const PULL_KV_BUDGET: usize = 800;
/// The largest push body accepted: a full batch plus the one object that
/// may overflow it (at most the largest object an origin accepts), and
/// JSON framing. Well inside the Workers request body limit (100 MB).
const MAX_PUSH_BYTES: usize = MAX_BATCH_BYTES + MAX_BODY_BYTES_CEILING as usize + (1 << 20);

/// `POST /_prefold/publish`: a batch from an origin (cluster token).
pub(crate) async fn accept_push(mut req: Request, edge: &Edge<'_>) -> Result<Response, EdgeError> {
    let Some(secret) = &edge.cluster_secret else {
        worker::console_error!("a push arrived, but PREFOLD_CLUSTER_SECRET is not set");
        return Err(EdgeError::Auth(prefold_core::auth::AuthError::Missing));
    };
    let authorization = req.headers().get("authorization")?;
    authorize_cluster(secret.as_bytes(), authorization.as_deref(), edge.now_secs())
        .map_err(EdgeError::Auth)?;
    let declared = req
        .headers()
        .get("content-length")?
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_PUSH_BYTES) {
        return Err(too_large());
    }
    let bytes = req.bytes().await?;
    if bytes.len() > MAX_PUSH_BYTES {
        return Err(too_large());
    }
    let batch = Batch::parse(&bytes).map_err(EdgeError::MalformedJson)?;
    let reply = apply(edge, &batch.items).await?;
    Ok(Response::from_json(&reply)?)
}

fn too_large() -> EdgeError {
    EdgeError::TooLarge {
        limit: u32::try_from(MAX_PUSH_BYTES).unwrap_or(u32::MAX),
    }
}

/// Writes a batch into KV under the edge's rules. Nothing is written unless
/// every key in the batch is valid.
async fn apply(edge: &Edge<'_>, items: &[Item<'_>]) -> Result<PushReply, EdgeError> {
    if items.len() > MAX_BATCH_ITEMS {
        return Err(EdgeError::BadRequest(format!(
            "a batch holds at most {MAX_BATCH_ITEMS} items"
        )));
    }
    let keys = items
        .iter()
        .map(|i| Key::parse(&i.k).map_err(EdgeError::BadKey))
        .collect::<Result<Vec<Key>, _>>()?;
    let kv = edge.kv()?;
    let current = current_meta(edge.env, &keys).await?;
    let mut reply = PushReply::default();
    let mut puts = Vec::new();
    for (item, key) in items.iter().zip(&keys) {
        match kv_decision(current.get(key.as_str()), item.v, edge.now_ms) {
            KvDecision::Unchanged => reply.unchanged += 1,
            KvDecision::Defer(after_ms) => reply.deferred.push(Deferred {
                k: key.to_string(),
                after_ms,
            }),
            KvDecision::Write => {
                let gone = item.b.is_none();
                let meta = KvMeta::new(item.v, &item.ct, edge.now_ms, gone);
                let body = item.b.map_or("", |b| b.get());
                let put = kv
                    .put_bytes(key.as_str(), body.as_bytes())?
                    .metadata(meta)?;
                puts.push(put.execute());
            }
        }
    }
    for result in join_all(puts).await {
        match result {
            Ok(()) => reply.written += 1,
            Err(e) => {
                // Not acknowledged as written: the origin's feed still lists
                // it, so the next pull writes it.
                worker::console_error!("KV write failed: {e}");
            }
        }
    }
    Ok(reply)
}

/// The KV metadata of `keys`: one bulk `getWithMetadata` (one operation
/// for up to 100 keys).
///
/// Called through `js_sys` rather than workers-rs's `get_bulk`, whose
/// `text_with_metadata` (0.8.7) fails on the `null` entry a missing key
/// gets — and a batch of new keys is the common case.
async fn current_meta(env: &Env, keys: &[Key]) -> Result<HashMap<String, KvMeta>, EdgeError> {
    use worker::js_sys::{Array, Function, Map, Object, Promise, Reflect, JSON};
    use worker::wasm_bindgen::{JsCast, JsValue};
    use worker::wasm_bindgen_futures::JsFuture;
    let mut out = HashMap::new();
    if keys.is_empty() {
        return Ok(out);
    }
    let js = |e: JsValue| EdgeError::Runtime(worker::Error::from(e));
    let namespace = Reflect::get(env, &JsValue::from_str(KV_BINDING)).map_err(js)?;
    let get: Function = Reflect::get(&namespace, &JsValue::from_str("getWithMetadata"))
        .map_err(js)?
        .dyn_into()
        .map_err(js)?;
    let names: Array = keys.iter().map(|k| JsValue::from_str(k.as_str())).collect();
    let options = Object::new();
    Reflect::set(
        &options,
        &JsValue::from_str("type"),
        &JsValue::from_str("text"),
    )
    .map_err(js)?;
    let promise: Promise = get
        .call2(&namespace, &names, &options)
        .map_err(js)?
        .dyn_into()
        .map_err(js)?;
    let found: Map = JsFuture::from(promise)
        .await
        .map_err(js)?
        .dyn_into()
        .map_err(js)?;
    for key in keys {
        let entry = found.get(&JsValue::from_str(key.as_str()));
        if !entry.is_object() {
            continue;
        }
        let meta = Reflect::get(&entry, &JsValue::from_str("metadata")).map_err(js)?;
        if !meta.is_object() {
            continue;
        }
        let text: String = JSON::stringify(&meta).map_err(js)?.into();
        if let Ok(m) = serde_json::from_str::<KvMeta>(&text) {
            out.insert(key.to_string(), m);
        }
    }
    Ok(out)
}

/// The Cron Trigger's work: for each origin, read its change feed from the
/// cursor kept in KV and publish what KV lacks.
pub(crate) async fn pull(edge: &Edge<'_>) {
    let Some(token) = edge.cluster_token() else {
        worker::console_error!("scheduled pull: PREFOLD_CLUSTER_SECRET is not set; nothing pulled");
        return;
    };
    let mut budget = PULL_KV_BUDGET;
    for origin in edge.cfg.origins.origins() {
        if budget < MAX_BATCH_ITEMS + 3 {
            break;
        }
        match pull_origin(edge, origin, &token, &mut budget).await {
            Ok((items, cursor)) => {
                worker::console_log!(
                    "pulled {items} changes from {} (cursor {cursor})",
                    origin.name
                )
            }
            Err(e) => worker::console_warn!("pull from {} failed: {e:?}", origin.name),
        }
    }
}

/// Pulls one origin's feed while the budget lasts. Returns the items seen
/// and the cursor reached.
async fn pull_origin(
    edge: &Edge<'_>,
    origin: &Origin,
    token: &str,
    budget: &mut usize,
) -> Result<(usize, u64), EdgeError> {
    let kv = edge.kv()?;
    let name = cursor_key(&origin.name);
    *budget -= 1;
    let start: u64 = kv
        .get(&name)
        .text()
        .await?
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let mut cursor = start;
    let mut seen = 0;
    while *budget >= MAX_BATCH_ITEMS + 2 {
        let url = format!(
            "{}{CHANGES_PATH}?after={cursor}&limit={MAX_BATCH_ITEMS}",
            origin.url
        );
        let (resp, body) = call_origin(
            crate::cluster_get(&url, token, &[])?,
            &origin.name,
            edge.cfg.origin_timeout_ms,
        )
        .await?;
        if resp.status_code() != 200 {
            return Err(EdgeError::OriginFailed {
                origin: origin.name.clone(),
                status: resp.status_code(),
            });
        }
        let page = Batch::parse(&body).map_err(EdgeError::MalformedJson)?;
        *budget -= 1 + page.items.len();
        let reply = apply(edge, &page.items).await?;
        seen += page.items.len();
        // A deferred item was written by someone else less than a second
        // ago; read this page again next time rather than skip it.
        if !reply.deferred.is_empty() {
            break;
        }
        match page.next {
            Some(next) if next > cursor => cursor = next,
            _ => break,
        }
        if !page.more {
            break;
        }
    }
    if cursor != start {
        *budget -= 1;
        kv.put_bytes(&name, cursor.to_string().as_bytes())?
            .execute()
            .await?;
    }
    Ok((seen, cursor))
}
