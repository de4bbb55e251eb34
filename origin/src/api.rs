//! The origin's HTTP surface: `app(state) -> Router`.
//!
//! Routes: `GET|HEAD|PUT|PATCH|DELETE|POST /o/{key}` (views at
//! `/o/{view}/{id}`, with query parameters for pages, ranges, text queries
//! and set membership), `GET /_prefold/changes` (the change feed, for the
//! edge), `GET /healthz`, `GET /readyz`, `GET /metrics`.
//!
//! Writes need a bearer token whose scope covers the key
//! ([`prefold_core::auth`]), unless the origin runs with `--open-writes`.
//! The cluster's own calls — the change feed, and a read another origin's
//! failure sent here (`x-prefold-failover`), answered from the store — need
//! a token signed with the cluster secret. Every error is an RFC 9457 problem body
//! built from the shared catalogue in `prefold_core::http`; internal errors
//! are logged in full and answered with a bare 500, so nothing internal leaks
//! into a response.
//!
//! Every check a request can fail without touching state (key, media type,
//! size, JSON, precondition syntax, durability, required preconditions) runs
//! here, before the engine sees the write; the engine's own refusals
//! (412, 409, 404, 503) happen before it changes anything. So a rejected
//! request leaves no trace in memory, log or store.
//!
//! Keys are taken from the raw request path (still percent-encoded) rather
//! than from axum's decoded path parameters, because the shared key grammar
//! must see an encoded `/` to reject it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use prefold_core::auth::{authorize_cluster, authorize_write, AuthError};
use prefold_core::http::{
    check_json, if_none_match, is_json_media_type, DURABILITY_HEADER, FAILOVER_HEADER,
    MERGE_PATCH_CONTENT_TYPE, OWNER_HEADER, PROBLEM_CONTENT_TYPE, SOURCE_HEADER, VERSION_HEADER,
};
use prefold_core::publish::{BatchWriter, CHANGES_PATH, MAX_BATCH_BYTES, MAX_BATCH_ITEMS};
use prefold_core::{Key, Preconditions, Problem, ProblemKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::dirty::Dirty;
use crate::engine::{Durability, Engine, Write};
use crate::error::{ApiError, EngineError, StoreError};
use crate::flush::FlushStats;
use crate::hot::HotTier;
use crate::metrics::{self, Snapshot};
use crate::object::Object;
use crate::ops::Op;
use crate::publication::{add_to_batch, unix_secs, Changes};
use crate::views::{PageQuery, Query as ViewQuery, Views};
use crate::wal::Wal;
use prefold_core::model::ViewKind;

/// Browsers and CDNs may keep a copy but must revalidate it (cheap: ETag/304).
/// The edge, not the origin, sets the policy clients see.
const CACHE_CONTROL: &str = "public, max-age=0, must-revalidate";
/// Every method `/o/{key}` answers.
const ALLOW: &str = "GET, HEAD, PUT, PATCH, DELETE, POST";
/// Operation names, for the per-operation write counters.
const OPS: [&str; 5] = ["put", "patch", "delete", "append", "increment"];

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// What [`AppState`] holds.
pub struct Inner {
    /// The engine, once the warm load has finished.
    pub engine: OnceLock<Arc<Engine>>,
    /// The view engine, when a model is configured.
    pub views: OnceLock<Views>,
    /// The hot tier.
    pub hot: Arc<HotTier>,
    /// Writes not yet in the store.
    pub dirty: Arc<Dirty>,
    /// Flusher counters.
    pub flush_stats: Arc<FlushStats>,
    /// The log, if writes are logged.
    pub wal: Option<Wal>,
    /// Objects loaded by the warm-up so far.
    pub warm_progress: AtomicU64,
    /// Every applied version, for the change feed and the pusher.
    pub changes: Arc<Changes>,
    /// The object store (failover reads go straight to it).
    store: Arc<dyn object_store::ObjectStore>,
    config: Config,
    ready: AtomicBool,
    writes: [AtomicU64; 5],
    requests: AtomicU64,
}

impl AppState {
    /// Builds the state; it starts not ready, with no engine.
    pub fn new(
        config: Config,
        hot: Arc<HotTier>,
        dirty: Arc<Dirty>,
        flush_stats: Arc<FlushStats>,
        wal: Option<Wal>,
        store: Arc<dyn object_store::ObjectStore>,
    ) -> AppState {
        let changes = Arc::new(Changes::new(config.edge_url.is_some()));
        AppState(Arc::new(Inner {
            engine: OnceLock::new(),
            views: OnceLock::new(),
            hot,
            dirty,
            flush_stats,
            wal,
            warm_progress: AtomicU64::new(0),
            changes,
            store,
            config,
            ready: AtomicBool::new(false),
            writes: Default::default(),
            requests: AtomicU64::new(0),
        }))
    }

    /// Marks the origin ready (or not) to serve objects.
    pub fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Release);
    }

    /// Whether the origin serves objects.
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }

    /// The state's parts.
    pub fn inner(&self) -> &Inner {
        &self.0
    }

    fn engine(&self) -> Result<&Engine, ApiError> {
        match self.0.engine.get() {
            Some(e) if self.is_ready() => Ok(e.as_ref()),
            _ => Err(ApiError::NotReady),
        }
    }

    /// Everything `/metrics` reports, now.
    pub fn snapshot(&self) -> Snapshot {
        let i = &self.0;
        let backlog = i.dirty.backlog();
        let f = &i.flush_stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            backlog_keys: backlog.keys as u64,
            backlog_bytes: backlog.bytes as u64,
            backlog_oldest_seconds: backlog.oldest.as_secs_f64(),
            store_puts: load(&f.puts),
            store_retries: load(&f.retries),
            store_failures: load(&f.failures),
            store_superseded: load(&f.superseded),
            coalesced: i.dirty.coalesced(),
            writes: OPS
                .iter()
                .zip(&i.writes)
                .map(|(op, n)| (*op, load(n)))
                .collect(),
            store_loads: i.engine.get().map_or(0, |e| e.store_loads()),
            evictions: i.hot.evictions(),
            hot_entries: i.hot.entries(),
            hot_bytes: i.hot.weighted_bytes(),
            wal_fsyncs: i.wal.as_ref().map_or(0, Wal::fsyncs),
            wal_records: i.wal.as_ref().map_or(0, Wal::records),
            wal_trimmed: load(&f.trimmed),
            warm_objects: load(&i.warm_progress),
            ready: self.is_ready(),
            object_requests: load(&i.requests),
            publication: {
                let p = &i.changes.stats;
                metrics::PublicationSnapshot {
                    pushed: load(&p.pushed),
                    unchanged: load(&p.unchanged),
                    deferred: load(&p.deferred),
                    failures: load(&p.failures),
                    dropped: load(&p.dropped),
                    pending: i.changes.pending() as u64,
                    feed_pages: load(&p.feed_pages),
                    feed_items: load(&p.feed_items),
                }
            },
            views: i.views.get().map(|v| {
                let s = v.stats();
                let c = v.counters();
                metrics::ViewsSnapshot {
                    changes: load(&s.changes),
                    derivations: load(&s.derivations),
                    skipped: load(&s.skipped),
                    published: load(&s.published),
                    publish_failures: load(&s.publish_failures),
                    divergences: load(&s.divergences),
                    dropped: load(&s.dropped),
                    pending: load(&s.pending),
                    sweeps: load(&s.sweeps),
                    targets: load(&s.targets),
                    counter_increments: load(&c.increments),
                    counter_publications: load(&c.publications),
                    lag: s.lag.clone(),
                }
            }),
        }
    }
}

/// The origin's router.
pub fn app(state: AppState) -> Router {
    let objects = || -> MethodRouter<AppState> {
        get(get_object)
            .put(put_object)
            .patch(patch_object)
            .delete(delete_object)
            .post(post_object)
            .fallback(method_not_allowed)
    };
    Router::new()
        .route("/o/{*key}", objects())
        .route("/o/", objects())
        .route(
            "/healthz",
            get(|| async { "ok" }).fallback(method_not_allowed_get),
        )
        .route("/readyz", get(readyz).fallback(method_not_allowed_get))
        .route(
            "/metrics",
            get(metrics_text).fallback(method_not_allowed_get),
        )
        .route(
            CHANGES_PATH,
            get(change_feed).fallback(method_not_allowed_get),
        )
        .fallback(|| async { ApiError::NoRoute })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (kind, detail) = match &self {
            ApiError::BadKey(e) => (ProblemKind::InvalidKey, Some(e.to_string())),
            ApiError::UnsupportedMediaType(ct) => (
                ProblemKind::UnsupportedMediaType,
                Some(format!(
                    "content type {ct:?} is not JSON; send application/json"
                )),
            ),
            ApiError::TooLarge { limit } => (
                ProblemKind::PayloadTooLarge,
                Some(format!("the body exceeds the limit of {limit} bytes")),
            ),
            ApiError::MalformedJson(d) => (ProblemKind::MalformedJson, Some(d.clone())),
            ApiError::Body(_) => (
                ProblemKind::MalformedJson,
                Some("the request body could not be read".to_owned()),
            ),
            ApiError::NotFound | ApiError::Engine(EngineError::NotFound) => {
                (ProblemKind::NotFound, None)
            }
            ApiError::InvalidRequest(d) => (ProblemKind::InvalidRequest, Some(d.clone())),
            ApiError::InvalidPrecondition(e) => {
                (ProblemKind::InvalidPrecondition, Some(e.to_string()))
            }
            ApiError::NotOwner { .. } => (ProblemKind::Misdirected, Some(self.to_string())),
            ApiError::Auth(e @ AuthError::Scope(_)) => (ProblemKind::Forbidden, Some(e.to_string())),
            ApiError::Auth(e) => (ProblemKind::Unauthorized, Some(e.to_string())),
            ApiError::Engine(EngineError::ResultTooLarge { .. }) => {
                (ProblemKind::PayloadTooLarge, Some(self.to_string()))
            }
            ApiError::PreconditionRequired(_) => {
                (ProblemKind::PreconditionRequired, Some(self.to_string()))
            }
            ApiError::Engine(EngineError::PreconditionFailed) => (
                ProblemKind::PreconditionFailed,
                Some("the object's current ETag does not satisfy If-Match / If-None-Match".into()),
            ),
            ApiError::Engine(EngineError::Conflict(d)) => (ProblemKind::Conflict, Some(d.clone())),
            ApiError::Engine(EngineError::Unconfirmed(_)) => (
                ProblemKind::StoreTimeout,
                Some("the write is applied and will be stored, but the object store did not confirm it in time".into()),
            ),
            ApiError::Engine(EngineError::Overloaded) => (
                ProblemKind::Overloaded,
                Some("too many writes are waiting for the object store; retry later".into()),
            ),
            ApiError::NoRoute => (ProblemKind::NotFound, Some("no such resource".to_owned())),
            ApiError::MethodNotAllowed(allow) => (
                ProblemKind::MethodNotAllowed,
                Some(format!("allowed: {allow}")),
            ),
            ApiError::NotReady => (ProblemKind::NotReady, None),
            ApiError::Violation(v) => (ProblemKind::ModelViolation, Some(v.to_string())),
            ApiError::Engine(EngineError::Invalid(d)) => {
                (ProblemKind::ModelViolation, Some(d.clone()))
            }
            ApiError::ReadOnlyView { .. } => {
                (ProblemKind::MethodNotAllowed, Some(self.to_string()))
            }
            ApiError::Query(e) => (ProblemKind::InvalidRequest, Some(e.to_string())),
            ApiError::Engine(EngineError::Store(e)) => {
                tracing::error!(error = %e, "a load from the object store failed");
                (ProblemKind::StoreUnavailable, None)
            }
            ApiError::Store(_)
            | ApiError::Encode(_)
            | ApiError::Engine(EngineError::LogFailed | EngineError::Stopped) => {
                tracing::error!(error = %self, "request failed");
                (ProblemKind::Internal, None)
            }
        };
        let status =
            StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, Problem::new(kind, detail).to_json()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            ApiError::MethodNotAllowed(allow) | ApiError::ReadOnlyView { allow, .. } => {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::NotReady
            | ApiError::Engine(EngineError::Overloaded | EngineError::Store(_)) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Engine(EngineError::Unconfirmed(version)) => {
                // The write is applied: say which version it made.
                h.insert(VERSION_HEADER, HeaderValue::from(version));
            }
            ApiError::NotOwner { owner, .. } => {
                if let Ok(v) = HeaderValue::from_str(&owner) {
                    h.insert(OWNER_HEADER, v);
                }
            }
            ApiError::Auth(e) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(e.challenge()),
                );
            }
            _ => {}
        }
        resp
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed(ALLOW)
}

async fn method_not_allowed_get() -> ApiError {
    ApiError::MethodNotAllowed("GET, HEAD")
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.engine().map(|_| "ready")
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let mut resp = metrics::render(&state.snapshot()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

fn key_of(uri: &Uri) -> Result<Key, ApiError> {
    let raw = uri.path().strip_prefix("/o/").unwrap_or_default();
    Ok(Key::parse(raw)?)
}

/// The key of a write, once its token allows it here: the key must parse
/// (400), the token must be valid and cover the key (401/403), and this
/// origin must own it (421). Nothing of the body has been read yet.
fn write_key(state: &AppState, uri: &Uri, headers: &HeaderMap) -> Result<Key, ApiError> {
    let key = key_of(uri)?;
    if let Some(secret) = &state.0.config.token_secret {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        authorize_write(secret.bytes(), auth, &key, unix_secs())?;
    }
    check_owner(state, &key)?;
    Ok(key)
}

/// Checks a cluster call's token. Without a cluster secret nothing passes.
fn check_cluster(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let secret = state
        .0
        .config
        .cluster_secret
        .as_ref()
        .ok_or(AuthError::Missing)?;
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    authorize_cluster(secret.bytes(), auth, unix_secs())?;
    Ok(())
}

async fn count_requests(
    State(state): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if req.uri().path().starts_with("/o/") {
        state.0.requests.fetch_add(1, Ordering::Relaxed);
    }
    next.run(req).await
}

/// `GET /_prefold/changes?after=V&limit=N`: the objects changed after
/// version `V`, oldest first, as a publication batch with the next cursor.
async fn change_feed(
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
    let horizon = crate::engine::clock_micros()
        .saturating_sub(state.0.config.feed_horizon_ms.saturating_mul(1000));
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
async fn failover_read(state: &AppState, key: &Key, head: bool) -> Result<Response, ApiError> {
    let waited = state.0.config.store_timeout();
    let fetch = crate::engine::stored(state.0.store.as_ref(), key);
    let slot = tokio::time::timeout(waited, fetch)
        .await
        .map_err(|_| EngineError::Store(StoreError::Timeout(waited)))?
        .map_err(EngineError::Store)?;
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

/// Refuses a key another origin owns: answering it here would serve a
/// stale or empty copy, or write beside the owner (DESIGN rule 1).
fn check_owner(state: &AppState, key: &Key) -> Result<(), ApiError> {
    match state.0.config.other_owner(key) {
        Some(owner) => Err(ApiError::NotOwner {
            key: key.to_string(),
            owner: owner.name.clone(),
            url: owner.url.clone(),
        }),
        None => Ok(()),
    }
}

fn version_headers(h: &mut HeaderMap, object: &Object) {
    // A quoted hex number is always a valid header value.
    if let Ok(tag) = HeaderValue::from_str(&object.etag()) {
        h.insert(header::ETAG, tag);
    }
    h.insert(VERSION_HEADER, HeaderValue::from(object.version));
}

// Takes the whole request rather than `Uri` and `HeaderMap` extractors: those
// clone, and this is the hot path.
async fn get_object(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let key = key_of(req.uri())?;
    if req.headers().contains_key(FAILOVER_HEADER) && !state.0.config.owns(&key) {
        check_cluster(&state, req.headers())?;
        return failover_read(&state, &key, req.method() == axum::http::Method::HEAD).await;
    }
    check_owner(&state, &key)?;
    if let Some(views) = state.0.views.get() {
        if let Some(view) = views.model().view(key.kind()) {
            let query = req.uri().query();
            let search = matches!(view.kind, ViewKind::Text(_)) && key.routing_part() == "_search";
            if query.is_some() || search {
                return view_query(&state, views, &view.kind, &key, query.unwrap_or_default())
                    .await;
            }
        }
    }
    let headers = req.headers();
    let object = state
        .engine()?
        .read(&key)
        .await?
        .ok_or(ApiError::NotFound)?;
    let not_modified = headers.get(header::IF_NONE_MATCH).is_some_and(|inm| {
        inm.to_str()
            .is_ok_and(|inm| if_none_match(inm, &object.etag()))
    });
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Body::from(object.body.clone()).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, object.content_type());
        r
    };
    let h = resp.headers_mut();
    version_headers(h, &object);
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    Ok(resp)
}

/// Query parameters of a view read.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ViewParams {
    after: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
    from: Option<String>,
    to: Option<String>,
    member: Option<String>,
    q: Option<String>,
}

/// A read that view state answers rather than a published object: a page
/// by cursor, an index range, a text query, a set membership check.
async fn view_query(
    state: &AppState,
    views: &Views,
    kind: &ViewKind,
    key: &Key,
    query: &str,
) -> Result<Response, ApiError> {
    // Refuse before asking the engine anything.
    state.engine()?;
    let p: ViewParams = query_params(query)?;
    let q = match kind {
        ViewKind::Text(_) if key.routing_part() == "_search" => {
            if p.after.is_some()
                || p.before.is_some()
                || p.member.is_some()
                || p.from.is_some()
                || p.to.is_some()
            {
                return Err(ApiError::InvalidRequest(
                    "`_search` takes `q` and `limit`".into(),
                ));
            }
            let q =
                p.q.ok_or_else(|| ApiError::InvalidRequest("`_search` needs `q`".into()))?;
            ViewQuery::Search {
                view: key.kind().to_owned(),
                q,
                limit: p.limit,
            }
        }
        ViewKind::Set(_) => {
            let member = p.member.filter(|_| {
                p.after.is_none()
                    && p.before.is_none()
                    && p.limit.is_none()
                    && p.q.is_none()
                    && p.from.is_none()
                    && p.to.is_none()
            });
            ViewQuery::Member(
                key.clone(),
                member.ok_or_else(|| {
                    ApiError::InvalidRequest("a set view takes `member=ID`".into())
                })?,
            )
        }
        ViewKind::List(_) | ViewKind::Index(_) | ViewKind::Text(_) => {
            if p.member.is_some() || p.q.is_some() {
                return Err(ApiError::InvalidRequest(
                    "pages take `after`, `before`, `limit` (and `from`, `to` for index views)"
                        .into(),
                ));
            }
            ViewQuery::Page(
                key.clone(),
                PageQuery {
                    after: p.after,
                    before: p.before,
                    limit: p.limit,
                    from: p.from,
                    to: p.to,
                },
            )
        }
        ViewKind::Embed(_) | ViewKind::Aggregate(_) | ViewKind::Counter(_) => {
            return Err(ApiError::InvalidRequest(format!(
                "a `{}` view takes no query parameters",
                kind.name()
            )))
        }
    };
    let answer = views.query(q).await?;
    let mut resp = axum::Json(answer).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

fn query_params<T: serde::de::DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let uri: Uri = format!("/?{query}")
        .parse()
        .map_err(|_| ApiError::InvalidRequest("malformed query string".into()))?;
    Query::<T>::try_from_uri(&uri)
        .map(|Query(t)| t)
        .map_err(|e| ApiError::InvalidRequest(e.body_text()))
}

/// Reads a body, refusing it as soon as it passes `limit` bytes.
async fn read_limited(headers: &HeaderMap, body: Body, limit: u32) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::from(limit)) {
        return Err(ApiError::TooLarge { limit });
    }
    let max = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::Body(e.to_string()))?;
        if buf.len() + chunk.len() > max {
            return Err(ApiError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The request's content type, if it is one of `accepted`.
fn content_type(headers: &HeaderMap, accepted: impl Fn(&str) -> bool) -> Result<String, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not ASCII)"))
        .unwrap_or_default();
    // The stored envelope keeps at most 255 bytes of content type.
    if !accepted(ct) || ct.len() > 255 {
        return Err(ApiError::UnsupportedMediaType(
            ct.chars().take(64).collect(),
        ));
    }
    Ok(ct.to_owned())
}

/// A JSON body: size limit, then well-formedness.
async fn json_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let body = read_limited(headers, body, state.0.config.max_body_bytes).await?;
    check_json(&body).map_err(ApiError::MalformedJson)?;
    Ok(body)
}

#[derive(Serialize)]
struct WriteAnswer<'a> {
    key: &'a str,
    version: u64,
    etag: &'a str,
    durability: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
}

/// The checks shared by every write, then the write itself.
async fn write(
    state: &AppState,
    key: Key,
    headers: &HeaderMap,
    op: Op,
    op_index: usize,
) -> Result<Response, ApiError> {
    // Several lines of a list header are one comma-separated list
    // (RFC 9110 §5.3).
    let list = |name: header::HeaderName| {
        let lines: Vec<&str> = headers
            .get_all(&name)
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
            .collect();
        (!lines.is_empty()).then(|| lines.join(", "))
    };
    let (if_match, if_none_match) = (list(header::IF_MATCH), list(header::IF_NONE_MATCH));
    let preconditions = Preconditions::parse(if_match.as_deref(), if_none_match.as_deref())?;
    let durability = match headers.get(DURABILITY_HEADER) {
        None => state.0.config.durability,
        Some(v) => v.to_str().ok().and_then(Durability::parse).ok_or_else(|| {
            ApiError::InvalidRequest(format!("{DURABILITY_HEADER} must be memory, log or store"))
        })?,
    };
    if preconditions.is_empty() && state.0.config.requires_precondition(&key) {
        return Err(ApiError::PreconditionRequired(key.kind().to_owned()));
    }
    let engine = state.engine()?;
    let views = state.0.views.get();
    if let Some(views) = views {
        check_model(engine, views, &key, &op).await?;
    }
    let applied = engine
        .write(Write {
            key: key.clone(),
            op,
            preconditions,
            durability,
        })
        .await?;
    state.0.writes[op_index].fetch_add(1, Ordering::Relaxed);
    let object = &applied.object;
    if let Some(views) = views {
        views.changed(key.clone(), object.version);
    }
    let answer = WriteAnswer {
        key: key.as_str(),
        version: object.version,
        etag: &object.etag(),
        durability: durability.as_str(),
        deleted: object.tombstone,
        result: applied.result,
    };
    let status = if applied.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut resp = (status, axum::Json(answer)).into_response();
    let h = resp.headers_mut();
    version_headers(h, object);
    h.insert(
        DURABILITY_HEADER,
        HeaderValue::from_static(durability.as_str()),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// What the model says about a write before the engine applies it: views
/// are read-only, and an entity's key shape, fields and references must fit
/// its type. Each field's type is checked again by the engine on the result
/// (a merge patch or an increment is only known there).
async fn check_model(engine: &Engine, views: &Views, key: &Key, op: &Op) -> Result<(), ApiError> {
    let model = views.model();
    if let Some(view) = model.view(key.kind()) {
        return Err(ApiError::ReadOnlyView {
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
                serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
            model.check(entity, key, &doc)?;
            doc
        }
        Op::Patch(patch) => patch.clone(),
        _ => return Ok(()),
    };
    // References must exist when written (`ref:`; `weakref:` may dangle).
    // Checked here, before the write, because another partition holds the
    // referenced entity; a delete racing this write can still leave a
    // dangling reference, which views render as null.
    for (field, target) in model.references(entity, &doc) {
        if engine.read(&target).await?.is_none() {
            return Err(ApiError::Violation(prefold_core::Violation::Dangling {
                entity: entity.name.clone(),
                field,
                target: target.to_string(),
            }));
        }
    }
    Ok(())
}

async fn put_object(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = write_key(&state, &uri, &headers)?;
    let content_type = content_type(&headers, is_json_media_type)?;
    let body = json_body(&state, &headers, body).await?;
    let op = Op::Put { content_type, body };
    write(&state, key, &headers, op, 0).await
}

async fn patch_object(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = write_key(&state, &uri, &headers)?;
    content_type(&headers, |ct| {
        ct.split(';')
            .next()
            .is_some_and(|e| e.trim().eq_ignore_ascii_case(MERGE_PATCH_CONTENT_TYPE))
    })?;
    let body = json_body(&state, &headers, body).await?;
    let patch: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    write(&state, key, &headers, Op::Patch(patch), 1).await
}

async fn delete_object(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = write_key(&state, &uri, &headers)?;
    write(&state, key, &headers, Op::Delete, 2).await
}

/// `POST /o/{key}?op=append|increment&path=/json/pointer`.
#[derive(Deserialize)]
struct OpQuery {
    op: Option<String>,
    #[serde(default)]
    path: String,
}

/// `POST /o/{counter_view}/{id}?op=increment` with an optional JSON integer
/// body (default 1): taken in memory, published within the view's period.
async fn count(
    state: &AppState,
    views: &Views,
    key: Key,
    q: OpQuery,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if q.op.as_deref() != Some("increment") || !q.path.is_empty() {
        return Err(ApiError::InvalidRequest(
            "a counter takes POST ?op=increment, with an optional integer body".into(),
        ));
    }
    state.engine()?;
    let body = read_limited(headers, body, state.0.config.max_body_bytes).await?;
    let by = if body.iter().all(u8::is_ascii_whitespace) {
        1
    } else {
        content_type(headers, is_json_media_type)?;
        check_json(&body).map_err(ApiError::MalformedJson)?;
        serde_json::from_slice::<i64>(&body)
            .ok()
            .filter(|n| n.unsigned_abs() <= 1 << 53)
            .ok_or_else(|| {
                ApiError::InvalidRequest("a counter increment is an integer of at most 2^53".into())
            })?
    };
    views.counters().add(&key, by);
    state.0.writes[4].fetch_add(1, Ordering::Relaxed);
    let mut resp = (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"key": key.as_str(), "accepted": by})),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

async fn post_object(
    State(state): State<AppState>,
    uri: Uri,
    query: Result<Query<OpQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = write_key(&state, &uri, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    if let Some(views) = state.0.views.get() {
        if let Some(ViewKind::Counter(_)) = views.model().view(key.kind()).map(|v| &v.kind) {
            return count(&state, views, key, q, &headers, body).await;
        }
    }
    let op_name = q.op.unwrap_or_default();
    if op_name != "append" && op_name != "increment" {
        return Err(ApiError::InvalidRequest(
            "POST needs ?op=append or ?op=increment (and &path=/json/pointer)".to_owned(),
        ));
    }
    if !q.path.is_empty() && !q.path.starts_with('/') {
        return Err(ApiError::InvalidRequest(format!(
            "path {:?} is not a JSON pointer (RFC 6901): it must be empty or start with `/`",
            q.path
        )));
    }
    content_type(&headers, is_json_media_type)?;
    let body = json_body(&state, &headers, body).await?;
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let (op, index) = if op_name == "append" {
        (
            Op::Append {
                pointer: q.path,
                value,
            },
            3,
        )
    } else {
        let Value::Number(delta) = value else {
            return Err(ApiError::InvalidRequest(
                "an increment's body must be a JSON number".to_owned(),
            ));
        };
        (
            Op::Increment {
                pointer: q.path,
                delta,
            },
            4,
        )
    };
    write(&state, key, &headers, op, index).await
}
