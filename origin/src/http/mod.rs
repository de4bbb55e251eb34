//! The HTTP layer: `app(state) -> Router`, one file per surface.
//!
//! - [`objects`]: `GET|HEAD|PUT|PATCH|DELETE|POST /o/{key}`, the checks
//!   every write passes before the engine sees it, and the answers;
//! - [`views`]: view reads that view state answers (pages, ranges, text
//!   queries, set membership) and counter increments, at `/o/{view}/{id}`;
//! - [`cluster`]: the cluster's own calls (the change feed for the edge,
//!   failover reads) and key ownership;
//! - [`forward`]: a request for a key another origin owns, sent on to the
//!   owner (one hop) and its answer relayed;
//! - [`auth`]: write tokens and cluster tokens;
//! - [`body`]: reading request bodies within the limit, media types;
//! - [`metrics`]: `/metrics`, assembled from every layer's report;
//! - [`error`]: the one error type, mapped to problem+json in one place.
//!
//! Plus `GET /healthz` and `GET /readyz`.
//!
//! Every check a request can fail without touching state (key, media type,
//! size, JSON, precondition syntax, durability, required preconditions, the
//! model) runs here, before the engine sees the write; the engine's own
//! refusals (412, 409, 404, 503) happen before it changes anything. So a
//! rejected request leaves no trace in memory, log or store.
//!
//! Keys are taken from the raw request path (still percent-encoded) rather
//! than from axum's decoded path parameters, because the shared key grammar
//! must see an encoded `/` to reject it.

mod auth;
mod body;
mod cluster;
mod error;
mod forward;
mod metrics;
mod objects;
mod peers;
mod views;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::Response;
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use object_store::ObjectStore;
use prefold_core::publish::CHANGES_PATH;
use prefold_core::Key;

pub(crate) use cluster::Ownership;
pub(crate) use error::ApiError;

use crate::base::{Clock, Durability, Object, OpKind, Secret};
use crate::engine::{Engine, HotTier};
use crate::publication::ChangeIndex;
use crate::storage::{Backlog, FlushStats, Wal};
use crate::views::Views;
use forward::Forwarder;

/// What the HTTP layer needs to know from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct HttpSettings {
    /// Largest accepted request body.
    pub(crate) max_body_bytes: u32,
    /// A write's durability unless it asks for another.
    pub(crate) durability: Durability,
    /// Key types whose writes must carry a precondition (`*`: all).
    pub(crate) require_precondition: Vec<String>,
    /// Verifies write tokens (`None`: writes are open).
    pub(crate) token_secret: Option<Secret>,
    /// Verifies cluster tokens (`None`: cluster calls are refused).
    pub(crate) cluster_secret: Option<Secret>,
    /// Which keys this origin owns.
    pub(crate) ownership: Ownership,
    /// Longest wait for the store in a failover read (forwarding derives
    /// its timeout from it).
    pub(crate) store_timeout: Duration,
    /// The change feed lists only changes older than this.
    pub(crate) feed_horizon: Duration,
    /// Token expiry and the feed's horizon are read on it.
    pub(crate) clock: Clock,
}

impl HttpSettings {
    /// Whether writes of this key must carry a precondition.
    pub(crate) fn requires_precondition(&self, key: &Key) -> bool {
        self.require_precondition
            .iter()
            .any(|t| t == "*" || t == key.kind())
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Inner>);

/// What [`AppState`] holds.
pub(crate) struct Inner {
    /// The engine, once the warm load has finished.
    pub(crate) engine: OnceLock<Arc<Engine>>,
    /// The view engine, when a model is configured.
    pub(crate) views: OnceLock<Views>,
    /// The hot tier.
    pub(crate) hot: Arc<HotTier>,
    /// Writes not yet in the store.
    pub(crate) backlog: Arc<Backlog>,
    /// Flusher counters.
    pub(crate) flush_stats: Arc<FlushStats>,
    /// The log, if writes are logged.
    pub(crate) wal: Option<Wal>,
    /// Objects loaded by the warm-up so far.
    pub(crate) warm_progress: AtomicU64,
    /// Every applied version, for the change feed and the pusher.
    pub(crate) changes: Arc<ChangeIndex>,
    /// The object store (failover reads go straight to it).
    store: Arc<dyn ObjectStore>,
    /// Sends requests for other origins' keys to their owners.
    forwarder: Forwarder,
    settings: HttpSettings,
    ready: AtomicBool,
    /// Writes acknowledged, by [`OpKind::index`].
    writes: [AtomicU64; OpKind::ALL.len()],
    requests: AtomicU64,
}

/// The parts an [`AppState`] is built from.
pub(crate) struct Parts {
    pub(crate) hot: Arc<HotTier>,
    pub(crate) backlog: Arc<Backlog>,
    pub(crate) flush_stats: Arc<FlushStats>,
    pub(crate) wal: Option<Wal>,
    pub(crate) changes: Arc<ChangeIndex>,
    pub(crate) store: Arc<dyn ObjectStore>,
}

impl AppState {
    /// Builds the state; it starts not ready, with no engine.
    pub(crate) fn new(settings: HttpSettings, parts: Parts) -> AppState {
        let Parts {
            hot,
            backlog,
            flush_stats,
            wal,
            changes,
            store,
        } = parts;
        AppState(Arc::new(Inner {
            engine: OnceLock::new(),
            views: OnceLock::new(),
            hot,
            backlog,
            flush_stats,
            wal,
            warm_progress: AtomicU64::new(0),
            changes,
            store,
            forwarder: Forwarder::new(&settings),
            settings,
            ready: AtomicBool::new(false),
            writes: Default::default(),
            requests: AtomicU64::new(0),
        }))
    }

    /// Marks the origin ready (or not) to serve objects.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Release);
    }

    /// Whether the origin serves objects.
    pub(crate) fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }

    /// The state's parts.
    pub(crate) fn inner(&self) -> &Inner {
        &self.0
    }

    fn engine(&self) -> Result<&Engine, ApiError> {
        match self.0.engine.get() {
            Some(e) if self.is_ready() => Ok(e.as_ref()),
            _ => Err(ApiError::NotReady),
        }
    }

    fn count_write(&self, kind: OpKind) {
        self.0.writes[kind.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// The origin's router.
pub(crate) fn app(state: AppState) -> Router {
    let objects = || -> MethodRouter<AppState> {
        get(objects::get_object)
            .put(objects::put_object)
            .patch(objects::patch_object)
            .delete(objects::delete_object)
            .post(objects::post_object)
            .fallback(method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                forward::to_owner,
            ))
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
            get(metrics::metrics_text).fallback(method_not_allowed_get),
        )
        .route(
            CHANGES_PATH,
            get(cluster::change_feed).fallback(method_not_allowed_get),
        )
        .route(
            crate::views::DERIVE_PATH,
            post(peers::derive_batch).fallback(method_not_allowed_post),
        )
        .route(
            crate::cluster::EXISTS_PATH,
            post(peers::exists).fallback(method_not_allowed_post),
        )
        .route(
            crate::views::SEARCH_PATH,
            post(peers::search_part).fallback(method_not_allowed_post),
        )
        .fallback(|| async { ApiError::NoRoute })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// Every method `/o/{key}` answers.
const ALLOW: &str = "GET, HEAD, PUT, PATCH, DELETE, POST";

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed(ALLOW)
}

async fn method_not_allowed_get() -> ApiError {
    ApiError::MethodNotAllowed("GET, HEAD")
}

async fn method_not_allowed_post() -> ApiError {
    ApiError::MethodNotAllowed("POST")
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.engine().map(|_| "ready")
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

fn key_of(uri: &Uri) -> Result<Key, ApiError> {
    let raw = uri.path().strip_prefix("/o/").unwrap_or_default();
    Ok(Key::parse(raw)?)
}

fn version_headers(h: &mut HeaderMap, object: &Object) {
    // A quoted hex number is always a valid header value.
    if let Ok(tag) = HeaderValue::from_str(&object.etag()) {
        h.insert(header::ETAG, tag);
    }
    h.insert(
        prefold_core::http::VERSION_HEADER,
        HeaderValue::from(object.version),
    );
}

/// `POST /o/{key}?op=append|increment&path=/json/pointer` (a counter view
/// takes `?op=increment` alone).
#[derive(serde::Deserialize)]
struct OpQuery {
    op: Option<String>,
    #[serde(default)]
    path: String,
}

fn query_params<T: serde::de::DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let uri: Uri = format!("/?{query}")
        .parse()
        .map_err(|_| ApiError::InvalidRequest("malformed query string".into()))?;
    Query::<T>::try_from_uri(&uri)
        .map(|Query(t)| t)
        .map_err(|e| ApiError::InvalidRequest(e.body_text()))
}
